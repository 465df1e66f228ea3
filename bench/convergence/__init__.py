"""The convergence benchmarks: `cli` (the real federation against its centralized twin) and
`sweep` (training recipes compared in-process), over the corpus in `data`; `runs` runs the arms,
`plot` draws the curves."""
