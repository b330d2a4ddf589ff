import { mount } from "svelte";
import App from "./App.svelte";
import { setAppTheme } from "./lib/theme";
import "./app.css";

// Follow the system until the settings are read, so the first paint has the right colours.
setAppTheme("system");

const target = document.getElementById("app");
if (!target) throw new Error("no #app element");
export default mount(App, { target });
