"""The program runtime: descriptions (spec), one loaded program (instance),
the running set driven by the config (manager)."""
