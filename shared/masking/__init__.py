"""Result masking (sans-I/O): the rules an agent applies, and how values are masked.

    spec.py        MaskSpec / MaskRule: the resolved rules of one session, as the gateway
                   sends them to the agent in OpenSession (typed, never the config's YAML)
    detectors.py   value detectors (email, card with Luhn, IBAN with mod-97, phone, national
                   IDs, JWT, API-key shapes, custom regex) returning spans in a string
    values.py      `Masker`: which rule covers which column, and masking one value (text,
                   JSON text, typed scalars) with a strategy (redact, partial, keyed token)

The PostgreSQL wire rewriter that applies this to DataRow and COPY lives in
`shared.pgwire.masking`; the agent drives it, the gateway only resolves rules and records
the counts the agent reports. Nothing here imports I/O, and no function keeps or logs an
unmasked value.
"""
