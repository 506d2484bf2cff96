// The panel's behaviour: dialogs, confirmations, remembered filters, live status of VM rows.
(function () {
  "use strict";

  document.addEventListener("change", (event) => {
    if (event.target.matches("[data-autosubmit]")) event.target.form.submit();
  });

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  // Dialogs: data-open="<id>" opens one, data-close closes it, data-load fetches a fragment into #load-dialog.
  document.addEventListener("click", async (event) => {
    const opener = event.target.closest("[data-open]");
    if (opener) {
      const dialog = document.getElementById(opener.dataset.open);
      if (dialog.id === "pool-dialog") fillPoolDialog(dialog, opener.dataset.pool ? JSON.parse(opener.dataset.pool) : null);
      if (dialog.id === "zone-dialog") fillZoneDialog(dialog, opener.dataset.zone ? JSON.parse(opener.dataset.zone) : null);
      if (dialog.id === "reset-dialog") {
        const form = dialog.querySelector("form");
        form.action = form.dataset.actionTemplate.replace(/\/0\/reset$/, "/" + opener.dataset.service + "/reset");
      }
      dialog.showModal();
      return;
    }
    const closer = event.target.closest("[data-close]");
    if (closer) { closer.closest("dialog").close(); return; }
    const loader = event.target.closest("[data-load]");
    if (loader) {
      const dialog = document.getElementById("load-dialog");
      const response = await fetch(loader.dataset.load, { headers: { "X-Requested-With": "fetch" } });
      dialog.querySelector("[data-content]").innerHTML = await response.text();
      dialog.showModal();
    }
  });

  function fillPoolDialog(dialog, pool) {
    const form = dialog.querySelector("form");
    const title = dialog.querySelector("h2");
    form.action = pool ? form.dataset.update.replace(/\/0$/, "/" + pool.id) : form.dataset.create;
    title.textContent = pool ? title.dataset.titleEdit : title.dataset.titleAdd;
    for (const input of form.querySelectorAll("input:not([type=hidden]), select")) {
      if (pool) input.value = pool[input.name] ?? "";
      else if (input.tagName === "INPUT") input.value = "";
    }
    for (const error of form.querySelectorAll(".field-error")) error.remove();
    updateHint(form);
  }

  // DNS zones: only the chosen provider's fields are shown; a stored secret shows a keep-as-is placeholder.
  function showProvider(form) {
    const chosen = form.provider.value;
    for (const group of form.querySelectorAll("[data-provider]")) {
      const on = group.dataset.provider === chosen;
      group.hidden = !on;
      for (const input of group.querySelectorAll("input")) input.disabled = !on;
    }
  }
  function fillZoneDialog(dialog, zone) {
    const form = dialog.querySelector("form");
    const title = dialog.querySelector("h2");
    form.action = zone ? form.dataset.update.replace(/\/0$/, "/" + zone.id) : form.dataset.create;
    title.textContent = zone ? title.dataset.titleEdit : title.dataset.titleAdd;
    form.name.value = zone ? zone.name : "";
    form.provider.value = zone ? zone.provider : "cloudflare";
    for (const input of form.querySelectorAll("[data-provider] input")) {
      const value = zone ? zone[input.name] : "";
      if (input.dataset.secret !== undefined) {
        input.value = "";
        input.placeholder = value && value.set ? form.dataset.keep : "";
      } else {
        input.value = typeof value === "string" ? value : "";
      }
    }
    for (const error of form.querySelectorAll(".field-error")) error.remove();
    showProvider(form);
  }
  document.addEventListener("change", (event) => {
    if (event.target.matches("[data-provider-select]")) showProvider(event.target.form);
  });

  let hintRequest = 0;
  async function updateHint(form) {
    const hint = form.querySelector("[data-rdns-hint]");
    if (!hint) return;
    const mine = ++hintRequest;  // only the answer to the latest keystroke may write the hint
    const params = new URLSearchParams({ family: form.family.value, gateway: form.gateway.value, mask: form.mask.value });
    if (!form.gateway.value || !form.mask.value) { hint.textContent = ""; return; }
    const answer = await (await fetch(hint.dataset.url + "?" + params, { headers: { Accept: "application/json" } })).json();
    if (mine !== hintRequest) return;
    hint.textContent = answer.hint ? hint.dataset.label.replace("__ZONE__", answer.hint) : "";
  }
  document.addEventListener("input", (event) => {
    const form = event.target.closest("#pool-dialog form");
    if (form && ["gateway", "mask", "family"].includes(event.target.name)) updateHint(form);
  });

  document.addEventListener("DOMContentLoaded", () => {
    const waiting = document.querySelector("dialog[data-open-now]");
    if (waiting) {
      waiting.showModal();
      const form = waiting.querySelector("form");
      if (waiting.id === "zone-dialog") showProvider(form); else updateHint(form);
    }

    // Filters remembered in the browser: restore them on a visit without any in the address.
    const filters = document.querySelector("form[data-remember]");
    if (filters) {
      const key = filters.dataset.remember;
      const url = new URL(window.location.href);
      const saved = JSON.parse(localStorage.getItem(key) || "{}");
      if (!url.searchParams.has("service_status") && !url.searchParams.has("vm_status") &&
          (saved.service_status || saved.vm_status)) {
        if (saved.service_status) url.searchParams.set("service_status", saved.service_status);
        if (saved.vm_status) url.searchParams.set("vm_status", saved.vm_status);
        window.location.replace(url.toString());
        return;
      }
      filters.addEventListener("change", (event) => {
        if (!event.target.matches("select")) return;
        localStorage.setItem(key, JSON.stringify({
          service_status: filters.service_status.value, vm_status: filters.vm_status.value }));
        filters.submit();
      });
    }

    // VM rows update without a reload: a cheap poll of the rows' state (status, VMID, error) every 5 s and,
    // when one changed, the rows again from this same page (VMID, addresses, badges, buttons).
    const table = document.getElementById("vms");
    if (table) {
      const refresh = async () => {
        const rows = [...table.querySelectorAll("tr[data-service]")];
        if (!rows.length || document.querySelector("dialog[open]")) return;  // not under an open dialog
        const response = await fetch(table.dataset.statusUrl + "?ids=" + rows.map((r) => r.dataset.service).join(","),
                                     { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        const states = await response.json();
        const changed = rows.some((row) => {
          const info = states[row.dataset.service];
          return info && row.dataset.state !== `${info.status}|${info.vmid ?? ""}|${info.error ? 1 : 0}`;
        });
        if (!changed) return;
        const page = await fetch(window.location.href, { headers: { Accept: "text/html" } });
        if (!page.ok) return;
        const fresh = new DOMParser().parseFromString(await page.text(), "text/html").querySelector("#vms tbody");
        if (fresh) table.querySelector("tbody").replaceWith(document.adoptNode(fresh));
      };
      setInterval(refresh, Number(table.dataset.refreshMs) || 5000);
    }
  });
})();
