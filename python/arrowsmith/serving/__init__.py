"""Models as served: versions, their batchers and runners, and how they change while serving."""
