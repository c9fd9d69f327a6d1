"""The one-command operando demo: a simulated delithiation experiment analysed live."""
