// Copies uPlot's minified browser build into the package's static files.
// The result is committed: the runtime and CI never need npm.
import { copyFileSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "node_modules", "uplot", "dist");
const out = join(here, "..", "thrifty", "dashboard", "static", "vendor");
const version = JSON.parse(readFileSync(join(here, "node_modules", "uplot", "package.json"), "utf8")).version;

mkdirSync(out, { recursive: true });
for (const [from, to] of [["uPlot.iife.min.js", "uplot.min.js"], ["uPlot.min.css", "uplot.min.css"]]) {
  copyFileSync(join(src, from), join(out, to));
  console.log(`uPlot ${version}: ${to} ${statSync(join(out, to)).size} bytes`);
}
copyFileSync(join(here, "node_modules", "uplot", "LICENSE"), join(out, "uplot.LICENSE"));
