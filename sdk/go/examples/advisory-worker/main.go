// Command advisory-worker ingests advisories: the README's Go worker.
// Run: AIRGAP_ORCH_URL=http://HOST:PORT AIRGAP_ORCH_TOKEN=... ./advisory-worker
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"airgap-orch.dev/orch"
)

func ingest(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
	var payload struct {
		AdvisoryID string `json:"advisory_id"`
		MirrorDown bool   `json:"mirror_down"`
	}
	if err := job.Decode(&payload); err != nil || payload.AdvisoryID == "" {
		return nil, orch.Permanent(errors.New("payload has no advisory_id")) // the job ends failed, no retry
	}
	if payload.MirrorDown {
		return nil, orch.RetryAfter(errors.New("advisory mirror unreachable"), 30*time.Second) // retried
	}
	for step := 1; step <= 3; step++ {
		select {
		case <-ctx.Done(): // cancelled by an operator, lease lost, or the worker is stopping
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond): // ... fetch and normalize ...
		}
		_ = job.Progress(float64(step)/4, fmt.Sprintf("%s: step %d of 3", payload.AdvisoryID, step))
	}
	data, _ := json.Marshal(map[string]any{"id": payload.AdvisoryID, "tenant": job.Tenant, "attempt": job.Attempt})
	path, _ := filepath.Abs(filepath.Join("out", job.ID+".json"))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return nil, err // any other error: retried with the orchestrator's backoff
	}
	job.Log("stored " + path) // a job log line: sent with the next heartbeat or the ack
	return []orch.Artifact{{URI: "file://" + path, Digest: fmt.Sprintf("sha256:%x", sha256.Sum256(data)),
		MIME: "application/json"}}, nil // recorded with the ack
}

func main() {
	worker, err := orch.NewWorker(os.Getenv("AIRGAP_ORCH_URL"), os.Getenv("AIRGAP_ORCH_TOKEN"),
		orch.WorkerConfig{Concurrency: 4})
	if err != nil {
		log.Fatal(err)
	}
	if err := worker.Handle("advisory.ingest", ingest); err != nil {
		log.Fatal(err)
	}
	summary, err := worker.Run(context.Background()) // until SIGTERM or Ctrl-C; finishes or releases running jobs
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", summary)
}
