// Live updates: the dashboard pushes the re-rendered live section (HTML built and escaped on
// the server) whenever the cluster changes; the browser swaps it in, without a reload.
(function () {
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  if (!live || !window.EventSource) return;
  var events = new EventSource("/events" + window.location.search);
  events.addEventListener("live", function (e) {
    live.innerHTML = e.data;
    conn.textContent = "live";
    conn.className = "conn ok";
  });
  events.onerror = function () {
    conn.textContent = "reconnecting";
    conn.className = "conn bad";
  };
})();
