"""Models of several environments behind one set of ports: the supervisor's split of a
server into process groups (`groups`), and, in the processes that own the ports, which
models other processes serve and how ready they are (`remote`), watched over their gRPC
health (`watch`)."""
