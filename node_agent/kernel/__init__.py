"""What the running kernel offers: filesystems, headers, features, struct layouts.

Everything here is read from the running kernel (tracefs, BTF, /proc), not
assumed from the headers BCC compiles against.
"""
