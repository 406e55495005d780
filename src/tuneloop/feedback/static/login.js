"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("status");
  status.textContent = "";
  try {
    const me = await TL.call("POST", "/api/login", { name: document.getElementById("name").value,
                                                     password: document.getElementById("password").value });
    window.location.assign(me.role === "admin" ? "/admin" : "/label");
  } catch (err) { status.textContent = err.message; }
});
