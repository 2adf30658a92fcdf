"""The web console: server-rendered pages under /console/ on the public port.

    auth.py       console sign-ins (a cookie naming a server-side session in the store),
                  CSRF tokens, the same-origin check
    oidc.py       sign-in through the OpenID provider (authorization code + PKCE)
    render.py     templates, the security headers, static files
    pages.py      the routes: sign-in and sign-out, the Reviewer page, the admin page;
                  every action goes through the API's own services (`IdentityService`,
                  `ReviewService`) with the signed-in `Identity`, so it is authorised and
                  audited exactly as the same call on the API
    templates/    Jinja2 templates (autoescaped)
    static/       the stylesheet and htmx (vendored with its licence: no CDN, works
                  air-gapped), served with the same security headers as the pages

Every response under /console/ carries a strict Content-Security-Policy (`default-src
'self'`, no inline script or style) and refuses framing. Pages update with htmx: forms post
with the CSRF token in a header, lists poll every 2 seconds.
"""

from gateway.console.pages import mount

__all__ = ["mount"]
