// Command testworker is the Go worker the test suite (tests/test_go_sdk.py) and the benchmark (scripts/bench.py)
// run as a process: a Worker with settings from flags and a handler chosen by -mode. It prints its Summary as one
// JSON line on stdout when it stops; a refusal goes to stderr as {"error": {...}} with the CLI's exit code.
//
//	testworker -url URL -type T [-mode sleep|block] [-sleep 1ms] [-record FILE] [-ready] ...
//	testworker -url URL -ack-job JOB -ack-lease LEASE   # one jobs.ack through the Go client, then exit
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"airgap-orch.dev/orch"
)

func main() {
	url := flag.String("url", os.Getenv("AIRGAP_ORCH_URL"), "server URL")
	token := flag.String("token", os.Getenv("AIRGAP_ORCH_TOKEN"), "token (scope orch:worker)")
	types := flag.String("type", "", "job types to handle, comma-separated")
	mode := flag.String("mode", "sleep", "sleep: work -sleep, then ack; block: record the lease, then wait to be cancelled")
	pause := flag.Duration("sleep", time.Millisecond, "how long each job works (mode sleep)")
	record := flag.String("record", "", "append one JSON line per handler start to this file")
	ready := flag.Bool("ready", false, `print "ready", then start on the first line of stdin`)
	workerID := flag.String("worker-id", "", "worker id")
	concurrency := flag.Int("concurrency", 0, "handlers at once")
	prefetch := flag.Int("prefetch", 0, "jobs claimed beyond the free slots")
	ackBatch := flag.Int("ack-batch", 0, "acks per jobs.ack_many at most")
	lease := flag.Float64("lease", 0, "lease seconds")
	claimWait := flag.Duration("claim-wait", 0, "long-poll wait")
	grace := flag.Duration("grace", 0, "grace period when stopping")
	ackJob := flag.String("ack-job", "", "send one ack for this job (with -ack-lease) and exit")
	ackLease := flag.String("ack-lease", "", "the lease -ack-job acks under")
	flag.Parse()

	if *ackJob != "" {
		client, err := orch.NewClient(*url, *token)
		if err == nil {
			var answer orch.ReportAnswer
			answer, err = client.Ack(context.Background(), *ackJob, *ackLease, nil)
			if err == nil {
				printJSON(os.Stdout, answer)
				return
			}
		}
		fail(err)
	}

	var recordMu sync.Mutex
	note := func(job *orch.Job) {
		if *record == "" {
			return
		}
		line, _ := json.Marshal(map[string]any{"job_id": job.ID, "lease_id": job.LeaseID, "attempt": job.Attempt,
			"worker_id": job.WorkerID, "pid": os.Getpid()})
		recordMu.Lock()
		defer recordMu.Unlock()
		file, err := os.OpenFile(*record, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			panic(err)
		}
		_, _ = file.Write(append(line, '\n'))
		_ = file.Sync()
		_ = file.Close()
	}
	handler := func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		note(job)
		if *mode == "block" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		time.Sleep(*pause)
		return nil, nil
	}
	worker, err := orch.NewWorker(*url, *token, orch.WorkerConfig{WorkerID: *workerID, Concurrency: *concurrency,
		Prefetch: *prefetch, AckBatchSize: *ackBatch, LeaseSeconds: *lease, ClaimWait: *claimWait,
		GracePeriod: *grace})
	if err != nil {
		fail(err)
	}
	for _, jobType := range strings.Split(*types, ",") {
		if err := worker.Handle(jobType, handler); err != nil {
			fail(err)
		}
	}
	if *ready {
		fmt.Println("ready")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	}
	summary, err := worker.Run(context.Background())
	printJSON(os.Stdout, summary)
	if err != nil {
		fail(err)
	}
}

func printJSON(file *os.File, value any) {
	data, _ := json.Marshal(value)
	fmt.Fprintln(file, string(data))
}

func fail(err error) {
	refusal := map[string]any{"message": err.Error(), "exit_code": orch.ExitCodeOf(err)}
	var problem *orch.Error
	if errors.As(err, &problem) {
		refusal["kind"], refusal["status"] = problem.Kind, problem.Status
		refusal["stale"] = problem.Stale()
	}
	printJSON(os.Stderr, map[string]any{"error": refusal})
	os.Exit(orch.ExitCodeOf(err))
}
