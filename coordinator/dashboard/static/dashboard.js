// tripmesh dashboard: the only script. The list refreshes itself every 2 s; a trip page follows its
// trip live through server-sent events (the server renders the HTML, this swaps it in).
"use strict";

function refreshList(box) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(box.dataset.refresh, { headers: { Accept: "text/html" } });
      if (response.ok) box.innerHTML = await response.text();
    } catch (error) {
      // the dashboard restarted or the network blinked: try again at the next tick
    } finally {
      busy = false;
    }
  }, 2000);
}

function followTrip(live) {
  const events = new EventSource(live.dataset.watch);
  events.addEventListener("trip", (event) => { live.innerHTML = event.data; });
  events.addEventListener("end", () => { events.close(); live.dataset.finished = "1"; });
  events.addEventListener("failure", (event) => {
    events.close();
    live.insertAdjacentHTML("afterbegin", `<p class="flash error"></p>`);
    live.querySelector(".flash.error").textContent = `Live updates stopped: ${event.data}`;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("trips");
  if (list && list.dataset.refresh) refreshList(list);
  const live = document.getElementById("live");
  if (live && live.dataset.watch) followTrip(live);
});
