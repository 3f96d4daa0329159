// The admin pages: confirmations before destructive posts; the usage filters apply as soon as they change.
import { wireConfirms } from "./confirm.js";

function wireFilters() {
  for (const form of document.querySelectorAll("form.filters")) {
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
  }
}

wireConfirms();
wireFilters();
