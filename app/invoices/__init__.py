"""Monthly invoices: one per account and calendar month (UTC), numbered gaplessly per year,
from the itemised charges of the usage events; JSON (SPEC 3.4) and PDF."""
