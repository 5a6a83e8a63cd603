"""The listener's operations on requests, independent of HTTP, one module per concern; the Bridge
(openhqm.bridge) is the one object the routes talk to."""
