// Build Backtalk's page: src/ → dist/ (index.html, assets/app.js, assets/app.css).
//
//   npm --prefix backtalk/web ci && npm --prefix backtalk/web run build
//
// dist/ is committed, so that users of the Python package need no Node. To tell a
// stale committed build, dist/build-manifest.json records a hash of the build's inputs:
//
//   {"sources_sha256": "<hex>", "sources": [<inputs>], "files": [<outputs>]}
//
// sources_sha256 is SHA-256 over the inputs, which are every file under src/ plus
// package.json and package-lock.json. Each input is named by its path relative to
// backtalk/web, with forward slashes ("package-lock.json", "package.json",
// "src/app.ts", ...). The paths are sorted as strings (JavaScript's default sort;
// Python's sorted() gives the same order for these ASCII names), and for each path in
// turn the hash is updated with, in order:
//
//   1. the path, UTF-8 encoded, followed by "\n";
//   2. the file's bytes, exactly as on disk;
//   3. "\n".
//
// In Python:
//
//   h = hashlib.sha256()
//   for path in sorted(paths):
//       h.update(path.encode() + b"\n"); h.update((web / path).read_bytes()); h.update(b"\n")
//
// "sources" lists those paths in that order, "files" the files written under dist/
// (paths relative to dist/, sorted; the manifest itself excluded). The manifest holds no
// time stamps: the same inputs give the same dist/, byte for byte.

import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const dist = join(web, "dist");

/** Every file under `dir`, as paths relative to backtalk/web with forward slashes. */
async function filesUnder(dir) {
  const entries = await readdir(join(web, dir), { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(web, join(entry.parentPath, entry.name)).split(sep).join("/"));
}

async function sourcesHash(paths) {
  const hash = createHash("sha256");
  for (const path of paths) {
    hash.update(`${path}\n`);
    hash.update(await readFile(join(web, path)));
    hash.update("\n");
  }
  return hash.digest("hex");
}

const sources = [...(await filesUnder("src")), "package.json", "package-lock.json"].sort();

await rm(dist, { recursive: true, force: true });
await mkdir(join(dist, "assets"), { recursive: true });

// app.ts imports styles.css, so esbuild writes assets/app.js and assets/app.css.
const result = await build({
  absWorkingDir: web,
  entryPoints: { app: "src/app.ts" },
  outdir: "dist/assets",
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  sourcemap: false,
  // Keep the bundled packages' licence comments, at the end of each file.
  legalComments: "eof",
  // SmallWebRTCTransport's default media manager needs Daily's SDK; the page passes
  // its own (src/media.ts), so Daily is left out (src/no-daily.ts).
  alias: { "@daily-co/daily-js": "./src/no-daily.ts" },
  metafile: true,
  logLevel: "warning",
});

await writeFile(join(dist, "index.html"), await readFile(join(web, "src", "index.html")));

const files = [
  "index.html",
  ...Object.keys(result.metafile.outputs).map((out) => relative("dist", out).split(sep).join("/")),
].sort();
const manifest = { sources_sha256: await sourcesHash(sources), sources, files };
await writeFile(join(dist, "build-manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);

for (const file of files) {
  const size = (await readFile(join(dist, file))).length;
  console.log(`dist/${file}  ${(size / 1024).toFixed(1)} kB`);
}
console.log(`dist/build-manifest.json  sources_sha256 ${manifest.sources_sha256}`);
