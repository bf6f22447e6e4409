"""An OpenD simulator: a TCP server speaking the OpenD wire protocol (the futu-api SDK's
own framing and protobuf messages), so the unmodified SDK connects to it as to OpenD.

    from trading.opend_sim.server import OpenDSimulator
    sim = OpenDSimulator(port=0); port = sim.start(); ...; sim.stop()
"""
