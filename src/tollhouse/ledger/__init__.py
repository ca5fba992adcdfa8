"""The spend and token ledger: reserve the worst case before forwarding, settle on actual usage."""
