"""The core: memory, batches, the WRITE loop and inner optimisers, attention kernels, the
contracts (Protocols) every backbone, method, task and tokenizer keeps, errors, and the formats of
what gradmem saves (checkpoint folders, memory files). It imports nothing else of gradmem."""
