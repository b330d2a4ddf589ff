import { mount } from "svelte";
import App from "./App.svelte";
import { setAppTheme } from "./lib/theme";
import { api } from "./lib/api";
import "./app.css";

// Follow the system until the settings are read, so the first paint has the right colours.
setAppTheme("system");

const target = document.getElementById("app");
if (!target) throw new Error("no #app element");
const app = mount(App, { target });

// Tell the app when the first frame is on screen (the next frame after the
// one that painted it): `lumen bench app` times the start up to here.
requestAnimationFrame(() => requestAnimationFrame(() => void api.uiReady().catch(() => {})));

export default app;
