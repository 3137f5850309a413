// Progressive enhancement only: every page works without this file.
"use strict";

// Top-up return page: poll until Stripe's webhook has credited the payment, then show the new
// balance (without JavaScript, a <noscript> meta refresh reloads the page instead).
(function pollTopUp() {
  const box = document.querySelector("[data-status-url]");
  if (!box || box.dataset.credited === "true") return;
  const started = Date.now();
  const state = document.getElementById("topup-state");
  const balance = document.getElementById("balance");
  const symbols = { EUR: "€", USD: "$", GBP: "£" };
  const show = (amount, currency) => {
    const [whole, fraction = ""] = amount.split(".");
    const cents = fraction.padEnd(2, "0");
    const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (symbols[currency] || currency + " ") + grouped + "." + cents.slice(0, 2);
  };
  async function check() {
    try {
      const response = await fetch(box.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const body = await response.json();
        balance.textContent = show(body.balance, body.currency);
        if (body.credited) {
          box.dataset.credited = "true";
          box.querySelector("h1").textContent = "Payment received";
          state.textContent = "Your credit has been added.";
          return;
        }
      }
    } catch (error) {
      // Offline for a moment: try again below.
    }
    const waited = Date.now() - started;
    if (waited > 60000) {
      state.textContent = "Stripe is taking longer than usual to confirm. Your balance updates " +
        "as soon as it does; you can leave this page.";
    }
    if (waited < 10 * 60000) setTimeout(check, waited > 60000 ? 5000 : 1500);
  }
  setTimeout(check, 1000);
})();

// "Copy" next to a newly created key.
document.querySelectorAll("[data-copy]").forEach((button) => {
  if (!navigator.clipboard) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const text = document.querySelector(button.dataset.copy).textContent.trim();
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  });
});

// Ask before an action that can't be undone (without JavaScript the button acts directly).
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});
