module airgap-orch.dev/orch

go 1.19
