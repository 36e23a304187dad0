"""Offline tooling around the Pulumi program: `python -m tooling plan` runs it under mocks
(plan.json, host files, a preview tree), `python -m tooling diff` compares two plans (the PR
comment), with the cost and the Mermaid deploy order. Not part of what `pulumi up` runs."""
