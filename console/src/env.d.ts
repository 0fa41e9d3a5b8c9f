// Stylesheets imported from scripts are bundled by Vite.
declare module '*.css';
