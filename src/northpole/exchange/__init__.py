"""The exchange matcher: Secret-Santa style gift exchanges, matched optimally and privately."""
