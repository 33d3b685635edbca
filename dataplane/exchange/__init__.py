"""The exchange core: what the node decides for one request, whatever the wire it came by.

`core.Exchange.run()` is a sans-IO state machine (a generator): the front ends (HTTP/1.1 in
`dataplane.http.proxy`, HTTP/2 in `dataplane.http.h2_front`) feed it events and carry out
the commands it yields (`commands`), with the upstream codecs of `dataplane.upstream`.
"""
