"""Classical XANES descriptors beside the network: edge features, the edge-position oxidation
state (``os_edge``) and run-relative tracking (``os_delta``). Pure numpy."""
