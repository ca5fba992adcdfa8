"""The fleet agent: effective settings, the policy bundle sync and its cache, the local data plane."""
