// A minimal scripted browser for the test identity provider's pages: a cookie jar, manual
// redirects, and forms filled in the way a person would (user name and password on the
// login page, "Allow" on the consent page, "Continue" on the device pages).

export class Browser {
  constructor({ user, password, log = () => {} }) {
    this.user = user;
    this.password = password;
    this.cookies = new Map();
    this.log = log;
  }

  cookieHeader() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  keepCookies(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => {
        const [k, v] = a.split('=').map((s) => s.trim().toLowerCase());
        return (k === 'max-age' && Number(v) <= 0)
          || (k === 'expires' && Date.parse(v) < Date.now());
      });
      if (expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  async request(url, { method = 'GET', form } = {}) {
    const headers = { cookie: this.cookieHeader() };
    let body;
    if (form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(form).toString();
    }
    this.log(`${method} ${url}`);
    const response = await fetch(url, { method, headers, body, redirect: 'manual' });
    this.keepCookies(response);
    return response;
  }

  // Follows redirects and fills forms from `url` until a redirect leads to a URL for which
  // `stop(url)` is true (returned), or a page without a form is reached (its text returned
  // as { page }).
  async drive(url, { stop = () => false, method = 'GET', form } = {}) {
    for (let step = 0; step < 30; step += 1) {
      const response = await this.request(url, { method, form });
      if (response.status >= 300 && response.status < 400) {
        const next = new URL(response.headers.get('location'), url).toString();
        await response.arrayBuffer();
        if (stop(next)) return { redirect: next };
        url = next;
        method = 'GET';
        form = undefined;
        continue;
      }
      const text = await response.text();
      if (response.status >= 400) {
        throw new Error(`HTTP ${response.status} from ${url}: ${stripTags(text)}`);
      }
      const error = /<p class="error">([^<]*)<\/p>/.exec(text);
      if (error) throw new Error(`the identity provider says: ${error[1]}`);
      const found = firstForm(text);
      if (!found) return { page: stripTags(text) };
      const fields = { ...found.fields };
      if ('password' in fields) {
        fields.login = this.user;
        fields.password = this.password;
      }
      url = new URL(found.action, url).toString();
      method = found.method;
      form = fields;
    }
    throw new Error('too many steps at the identity provider');
  }
}

function stripTags(text) {
  return text.replace(/<style[\s\S]*?<\/style>/g, '').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();
}

function attr(tag, name) {
  const m = new RegExp(`\\s${name}="([^"]*)"`, 'i').exec(tag);
  return m ? m[1].replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n))).replace(/&amp;/g, '&') : undefined;
}

// The first form on a page: its action, method and named inputs with their values.
function firstForm(text) {
  const m = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(text);
  if (!m) return undefined;
  const fields = {};
  for (const input of m[2].matchAll(/<input\b[^>]*>/gi)) {
    const name = attr(input[0], 'name');
    if (name) fields[name] = attr(input[0], 'value') ?? '';
  }
  return {
    action: attr(m[1], 'action') ?? '',
    method: (attr(m[1], 'method') ?? 'GET').toUpperCase(),
    fields,
  };
}

// `--name value` flags of a helper script, with the environment as fallback.
export function need(value, what) {
  if (value === undefined || value === '') {
    console.error(`${process.argv[1]}: ${what} is required`);
    process.exit(2);
  }
  return value;
}
