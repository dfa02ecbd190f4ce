"""Step 2 of a run, between the ONNX import and task extraction: the Relax graph rewritten into
the kernels worth tuning (fusion, layouts, precision, and the rewrites that give a kernel a
shape its schedule rules can block: Winograd, split-K, padded rows and groups). `graph` holds
the pass list; each other module is one rewrite."""
