// The console's only way to the bastion: the public REST API, same origin,
// the session in an HttpOnly cookie the page never sees. Every write carries
// the session's CSRF token; a 401 sends the person back to sign in.
import type { components } from './schema';

export type Schemas = components['schemas'];

let csrf = '';
let onSignedOut: (why: string) => void = () => {};

export function setCsrf(token: string) {
  csrf = token;
}
export function whenSignedOut(f: (why: string) => void) {
  onSignedOut = f;
}
export function csrfToken() {
  return csrf;
}

export class ApiError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

async function errorOf(r: Response): Promise<ApiError> {
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body?.error?.message) message = body.error.message;
  } catch {
    /* not JSON: the status says enough */
  }
  return new ApiError(r.status, message);
}

export async function call<T>(method: string, path: string, body?: unknown, quiet401 = false): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-Postern-CSRF'] = csrf;
  const r = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) {
    const e = await errorOf(r);
    if (r.status === 401 && !quiet401) onSignedOut(e.message);
    throw e;
  }
  if (r.status === 204) return undefined as T;
  const type = r.headers.get('content-type') ?? '';
  return (type.includes('json') ? r.json() : r.text()) as Promise<T>;
}

export const get = <T>(path: string) => call<T>('GET', path);
export const post = <T>(path: string, body?: unknown) => call<T>('POST', path, body);
export const put = <T>(path: string, body?: unknown) => call<T>('PUT', path, body);
export const del = <T>(path: string) => call<T>('DELETE', path);

/** A path segment, escaped. */
export const seg = encodeURIComponent;

/** A query string from the set values of `q`. */
export function query(q: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : '';
}
