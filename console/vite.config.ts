// The console's build: plain Vite with Preact's JSX, no plugins. Output goes
// to dist/, which the bastion embeds (bastion/src/http/console/assets.rs).
// Reproducible: no timestamps, content-hashed names, sources from the lockfile.
import { defineConfig } from 'vite';

export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    // One module preload polyfill is inline script: the CSP forbids it, and
    // every browser the console supports preloads modules itself.
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 600,
  },
});
