// The Me page: copying a newly shown API key (forms marked data-confirm ask first: app.js does that).

function wireCopy() {
  const button = document.getElementById("copy-secret");
  const status = document.getElementById("copy-status");
  if (!button) return;
  button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.copy);
    if (!input) return;
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = "Copied.";
    } catch {
      status.textContent = "Select the key and copy it with your keyboard.";
    }
  });
}

wireCopy();
