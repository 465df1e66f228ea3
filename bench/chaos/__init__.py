"""The chaos benchmark: `cli` runs a federation under a seeded `schedule` of faults (`fed`) and
`audit` accounts for every update (none lost, none counted twice)."""
