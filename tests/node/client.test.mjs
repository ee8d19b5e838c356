// A Node.js client of Partita: @grpc/grpc-js + @grpc/proto-loader loading protos/partita/v1.
//
// Run by tests/test_node_client.py against a real server:
//   PARTITA_ADDRESS=127.0.0.1:PORT node --test tests/node/client.test.mjs
// It registers a workflow with a daily partitioned asset, enqueues a partition, claims and
// completes it as a worker (with an artifact), reads the latest materialization, and follows
// WatchRuns from after_sequence 0 until the run's SUCCEEDED event.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const ADDRESS = process.env.PARTITA_ADDRESS;
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const PROTO_ROOT = path.join(REPO, "protos");
const PROTO_FILES = readdirSync(path.join(PROTO_ROOT, "partita", "v1"))
  .filter((name) => name.endsWith(".proto"))
  .map((name) => `partita/v1/${name}`);
const CALL_SECONDS = 15;

// The google/protobuf well-known types (timestamp, duration, struct) come bundled with
// protobufjs (and always win over files on includeDirs), so includeDirs only names the root
// of our own imports. Their JS field names are camelCase even with keepCase: a Struct value
// is `{ stringValue: "emea" }` / `{ numberValue: 42 }`, while partita.v1 fields stay snake_case.
const definition = protoLoader.loadSync(PROTO_FILES, {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const partita = grpc.loadPackageDefinition(definition).partita.v1;

function deadline(seconds = CALL_SECONDS) {
  return new Date(Date.now() + seconds * 1000);
}

// Promisified unary call: call(stub, "RegisterWorkflow", request).
function call(stub, method, request, seconds = CALL_SECONDS) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: deadline(seconds) }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

test("a Node client drives a partition from enqueue to materialization", async (t) => {
  assert.ok(ADDRESS, "PARTITA_ADDRESS must name the server (HOST:PORT)");
  const credentials = grpc.credentials.createInsecure();
  const workflows = new partita.WorkflowService(ADDRESS, credentials);
  const runs = new partita.RunService(ADDRESS, credentials);
  const workers = new partita.WorkerService(ADDRESS, credentials);
  const assets = new partita.AssetService(ADDRESS, credentials);
  t.after(() => [workflows, runs, workers, assets].forEach((client) => client.close()));

  const suffix = randomBytes(4).toString("hex");
  const slug = `node-sales-${suffix}`;
  const assetId = `node/daily-${suffix}`;
  const key = "2024-01-15";

  // Register a workflow producing a daily partitioned asset.
  const registered = await call(workflows, "RegisterWorkflow", {
    workflow: {
      slug,
      description: "registered by the Node client test",
      produces: [
        {
          asset_id: assetId,
          partitioning: {
            time_window: { schedule_type: "SCHEDULE_TYPE_DAILY", start: "2024-01-01", timezone: "UTC" },
          },
        },
      ],
    },
  });
  assert.equal(registered.workflow.slug, slug);
  assert.equal(registered.workflow.produces[0].partitioning.kind, "time_window");

  // A key outside the definition is INVALID_ARGUMENT with a BadRequest (status details).
  await assert.rejects(call(runs, "EnqueueRun", { workflow_slug: slug, partition_key: "2024-01-15-01:00" }), (error) => {
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.ok(error.metadata.get("grpc-status-details-bin").length > 0, "the error carries google.rpc details");
    return true;
  });

  // Enqueue the partition.
  const { run } = await call(runs, "EnqueueRun", {
    workflow_slug: slug,
    partition_key: key,
    parameters: { fields: { region: { stringValue: "emea" } } },
    labels: { client: "node" },
    request_id: `node-${suffix}`,
  });
  assert.equal(run.state, "RUN_STATE_QUEUED");
  assert.equal(run.partition_key, key);
  assert.equal(run.trigger.kind, "TRIGGER_KIND_MANUAL");

  // Claim it as a worker (a long poll of up to 5 s), heartbeat, and complete with an artifact.
  const claim = await call(workers, "ClaimRun", {
    worker_id: "node-worker",
    workflow_slugs: [slug],
    wait: { seconds: 5, nanos: 0 },
    lease_duration: { seconds: 30, nanos: 0 },
  });
  assert.ok(claim.run, "ClaimRun returned a run");
  assert.equal(claim.run.id, run.id);
  assert.equal(claim.run.state, "RUN_STATE_RUNNING");
  assert.equal(claim.run.parameters.fields.region.stringValue, "emea");
  assert.ok(claim.lease_id);

  const beat = await call(workers, "Heartbeat", {
    run_id: run.id,
    lease_id: claim.lease_id,
    progress: 0.5,
    message: "half way",
  });
  assert.equal(beat.cancel_requested, false);

  const artifact = {
    file_name: `${key}.csv`,
    storage_url: `s3://bucket/sales/${key}.csv`,
    size_bytes: "1234",
    content_type: "text/csv",
  };
  const completed = await call(workers, "CompleteRun", {
    run_id: run.id,
    lease_id: claim.lease_id,
    assets: [{ asset_id: assetId, artifacts: [artifact], payload: { fields: { rows: { numberValue: 42 } } } }],
  });
  assert.equal(completed.materializations.length, 1);
  const recorded = completed.materializations[0];
  assert.equal(recorded.partition_key, key);
  assert.equal(recorded.run_id, run.id);

  // Read the latest materialization of the partition.
  const { materialization } = await call(assets, "GetLatestMaterialization", {
    asset_id: assetId,
    partition_key: key,
  });
  assert.equal(materialization.id, recorded.id);
  assert.equal(materialization.asset_id, assetId);
  assert.deepEqual(
    materialization.artifacts.map(({ file_name, storage_url, size_bytes, content_type }) => ({
      file_name,
      storage_url,
      size_bytes,
      content_type,
    })),
    [artifact],
  );
  assert.equal(materialization.payload.fields.rows.numberValue, 42);

  const done = await call(runs, "GetRun", { run_id: run.id });
  assert.equal(done.run.state, "RUN_STATE_SUCCEEDED");

  // Follow WatchRuns from the start of the log until the run's SUCCEEDED event, then end it.
  const events = await new Promise((resolve, reject) => {
    const seen = [];
    const stream = runs.WatchRuns({ run_id: run.id, after_sequence: "0" }, { deadline: deadline() });
    stream.on("data", ({ event }) => {
      if (event.type === "RUN_EVENT_TYPE_BOOKMARK") return;
      seen.push(event);
      if (event.type === "RUN_EVENT_TYPE_SUCCEEDED") {
        stream.cancel();
        resolve(seen);
      }
    });
    stream.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
    });
    stream.on("end", () => reject(new Error(`WatchRuns ended before SUCCEEDED; saw ${seen.map((e) => e.type)}`)));
  });

  // A run's MATERIALIZED events are written in the same commit as its SUCCEEDED event; the
  // materialization itself was read above, so the stream is ended at SUCCEEDED.
  const types = events.map((event) => event.type);
  assert.equal(types[0], "RUN_EVENT_TYPE_QUEUED", `QUEUED comes first; saw ${types}`);
  assert.equal(types[1], "RUN_EVENT_TYPE_STARTED", `then STARTED; saw ${types}`);
  assert.equal(types.at(-1), "RUN_EVENT_TYPE_SUCCEEDED");
  const sequences = events.map((event) => BigInt(event.sequence));
  sequences.slice(1).forEach((sequence, index) => assert.ok(sequence > sequences[index], "sequences rise"));
  for (const event of events) {
    assert.equal(event.run_id, run.id);
    assert.equal(event.workflow_slug, slug);
    assert.equal(event.partition_key, key);
  }
  const succeeded = events.at(-1);
  assert.equal(succeeded.state, "RUN_STATE_SUCCEEDED");
  assert.equal(succeeded.attempt, 1);
});
