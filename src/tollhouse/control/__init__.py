"""Control-plane building blocks (pure): agent policy, maintenance windows, versions, document diffs."""
