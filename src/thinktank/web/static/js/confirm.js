// Forms marked data-confirm="question" ask before they post (without JavaScript they simply post).
export function wireConfirms(root = document) {
  for (const form of root.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}
