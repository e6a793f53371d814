"""The stages, one module each (index, extract, train-base, infer-base, train-diff, infer-diff, fuse, score, tune), and
what several of them share (reading and fusing cached maps, which maps a fusion reads, the trained models).
A stage never imports another stage: it reads their entries from the store."""
