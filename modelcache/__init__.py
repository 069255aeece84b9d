"""The `modelcache` entry point: hands `modelcache node ...` to the node, everything else to the CLI.

A package of its own so that neither side imports the other: `node` depends on
`coordinator`, and `coordinator` never imports `node` (docs/design.md).
"""
