"""Pulumi policy pack: guardrails that stop unsafe infrastructure before review.

Run it with `pulumi preview --policy-pack policy` (see docs/delivery.md). The rules live in
`policy.checks` as pure functions over the resource inputs exactly as the Pulumi engine hands
them to a policy pack (camelCase schema names, nested dicts); `policy.policies` wraps them as
`ResourceValidationPolicy` objects, and `policy/__main__.py` serves them as a pack.
"""
