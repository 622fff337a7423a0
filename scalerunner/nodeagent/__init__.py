"""The agent on each Scalenode: retained state, telemetry and commands over MQTT (docs/agent.md).

Job runtimes and driving the LED indicator are planned; docs/architecture.md says what is built.
"""
