"""Identity: who a person or a machine is, and the gateway credentials they get.

    people   OIDC authorization code + PKCE (loopback redirect) or device flow  -+
             local user, password + TOTP (setups without an IdP)                  |
    machines workload identity: a trusted issuer's JWT (CI OIDC token)          +--> a login
             service account API keys (wgk_, scoped, expiring)                    |   (gateway
                                                                                  |   session)
                    access credential wgt_ (ttl) + refresh token wgr_ (rotated) <-+
                    per-connection credentials wgt_ (minutes) for native clients

* ``oidc``: the relying party (discovery, JWKS cache with rotation, JWT validation rules,
  token/userinfo/device endpoints), on authlib (OAuth messages) and joserfc (JOSE).
* ``claims``: verified claims -> user name, groups; claim globs, workload trust matching. Pure.
* ``keys``: which keys of an issuer's JWKS may verify, with which algorithms. Pure.
* ``workload``: which ``identity.workload`` entry a machine's JWT passes (each entry with its
  own validator), and the digest a ``single_use`` entry remembers it by.
* ``local``: scrypt password hashes and RFC 6238 TOTP for local users.
* ``credentials``: ``IdentityService``, which signs people and machines in, refreshes,
  mints per-connection credentials and API keys, revokes (ending live sessions through the
  session broker), and audits every success and failure.

``gateway.auth.Authenticator`` checks a presented credential on every request and session;
``gateway.policy.grants`` decides what the identity may reach.
"""
