#!/usr/bin/env bash
# `make compose-test`: the docker-compose stack built from this checkout and run for real.
# Builds the image (making the debian:bookworm-slim base where no registry answers, and giving the
# build this machine's CA bundle for a TLS-inspecting gateway), starts the stack without its demo
# producer, then in three phases produces generated transactions with 5% malformed (20,000 each):
#   1. waits until committed scores plus dead letters account for every record; once the stream is
#      quiet, checks that the windowed analytics committed are the plain-Python reference's, figure
#      for figure, every window each partition's watermark passed included; checks that `up` again
#      submits no second job;
#   then stops the job with a savepoint and resumes it from there at parallelism 4 (on the two
#   TaskManagers the stack runs with, `--scale taskmanager=2`);
#   2. once a checkpoint of the phase completed and before its last record is committed, kills one
#      TaskManager container (SIGKILL) and starts it again; the REST API must report a restore.
#      Its records start again at the generator's first event time, so most are late;
#   3. stops the job with a savepoint again, resumes it at parallelism 2 and produces a third batch.
# At the end every txn_id is scored exactly once (read_committed), the dead letters are unique
# and as many as the malformed records, and every window and late line is committed once. Then
# `down -v`, and nothing of the stack may be left (containers, networks, volumes, by the compose
# project's label; the images stay, for the next build). Works with `docker compose` (v2) and
# `docker-compose` 1.29. Checks that need Python run in a container of the image
# (tests/compose_stack.py).
set -euo pipefail
cd "$(dirname "$0")/.."

project=riskstream-compose-test
records=20000
malformed_share=0.05
seed_one=101
seed_two=102
seed_three=103

fail() { echo "compose-test: $*" >&2; exit 1; }

if docker compose version > /dev/null 2>&1; then
  compose_command=(docker compose)
elif command -v docker-compose > /dev/null; then
  compose_command=(docker-compose)
else
  fail "needs docker compose (v2) or docker-compose; install one (apt-get install docker-compose)"
fi
compose() { "${compose_command[@]}" --project-name "$project" --file docker-compose.yml "$@"; }
checks() { compose run --rm -T tools python -m tests.compose_stack "$@"; }
container() { compose ps -q "$1"; }
leftovers() {
  local label="label=com.docker.compose.project=$project"
  echo "$(docker ps -aq --filter "$label")$(docker network ls -q --filter "$label")$(docker volume ls -q --filter "$label")"
}

docker info > /dev/null 2>&1 || fail "no Docker engine answers; start one (dockerd) and retry"
for port in 9092 8081 9249 9250; do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    fail "127.0.0.1:$port is taken (another stack? \`docker compose down\` stops it); the stack publishes it"
  fi
done

started=$SECONDS
phase_times=()
mark() { phase_times+=("$(printf '%-48s %4d s' "$1" $((SECONDS - started)))"); echo "== $1 ($((SECONDS - started)) s)"; }
clean_up() {
  local status=$?
  if [ "$status" != 0 ]; then
    mkdir -p var/log
    compose logs --no-color > var/log/compose-test-failed.log 2>&1 || true
    echo "compose-test: failed; the stack's logs are in var/log/compose-test-failed.log; removing the stack" >&2
  fi
  compose down -v --remove-orphans > /dev/null 2>&1 || true
}
trap clean_up EXIT

docker/base-image.sh
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt docker/build-ca/host-bundle.crt
fi
export PRODUCER_RECORDS=$records PRODUCER_MALFORMED_SHARE=$malformed_share PRODUCER_RATE=2000 PRODUCER_SEED=$seed_one
compose build
mark "image built"
compose up -d --scale taskmanager=2 kafka topics jobmanager taskmanager submit
[ "$(docker wait "$(container submit)")" = 0 ] || { compose logs submit; fail "the submit service failed"; }
job_id=$(checks job --parallelism 2 --taskmanagers 2 | tail -1)
echo "job $job_id is running at parallelism 2 on 2 TaskManagers"
mark "stack healthy, job running"

# Phase one: the producer service as defined, with this test's numbers.
compose up -d --no-deps producer
[ "$(docker wait "$(container producer)")" = 0 ] || { compose logs producer; fail "the producer failed"; }
checks accounted $seed_one --records $records --malformed-share $malformed_share
mark "phase one accounted for"
windows=$(checks analytics-quiet | tail -1)
echo "$windows"
mark "phase one's windows as the reference's"
compose up -d --scale taskmanager=2 kafka topics jobmanager taskmanager submit
[ "$(docker wait "$(container submit)")" = 0 ] || { compose logs submit; fail "the second submit failed"; }
submitted=$(compose logs submit)
[[ $submitted == *"already running"* ]] || fail "the second up did not report the running job"
checks one-job
mark "second up: no second job"

# Rescaled as docs/docker.md says: stopped with a savepoint, resumed from it at parallelism 4.
stopped=$(compose run --rm -T tools riskstream stop | tail -1)
echo "$stopped"
compose run --rm -T tools riskstream submit --from latest --parallelism 4 | tail -1
job_id=$(checks job --parallelism 4 --taskmanagers 2 | tail -1)
echo "job $job_id is running at parallelism 4"
mark "rescaled from 2 to 4 with a savepoint"

# Phase two: slower, so that the kill lands while records are still arriving.
phase_start_ms=$(($(date +%s%N) / 1000000))
PRODUCER_SEED=$seed_two PRODUCER_RATE=400 compose up -d --no-deps producer
checks phase-checkpoint $phase_start_ms $((2 * records))
killed=$(container taskmanager | head -1)
docker kill "$killed" > /dev/null
mark "one of two taskmanagers killed (SIGKILL)"
# The survivor stays; the killed one's container starts again (a new TaskManager process).
compose up -d --no-deps --scale taskmanager=2 taskmanager
restore=$(checks restored | tail -1)
echo "$restore"
mark "job restored on a new taskmanager"
[ "$(docker wait "$(container producer)")" = 0 ] || { compose logs producer; fail "the producer failed"; }
checks accounted $seed_one $seed_two --records $records --malformed-share $malformed_share
mark "both phases exactly once"

# Phase three: rescaled back to parallelism 2, and read_committed readers still advance.
compose run --rm -T tools riskstream stop | tail -1
compose run --rm -T tools riskstream submit --from latest --parallelism 2 | tail -1
job_id=$(checks job --parallelism 2 --taskmanagers 2 | tail -1)
mark "rescaled from 4 back to 2"
PRODUCER_SEED=$seed_three compose up -d --no-deps producer
[ "$(docker wait "$(container producer)")" = 0 ] || { compose logs producer; fail "the producer failed"; }
outcome=$(checks accounted $seed_one $seed_two $seed_three --records $records --malformed-share $malformed_share | tail -1)
echo "$outcome"
mark "all three phases exactly once"
analytics=$(checks analytics-once | tail -1)
echo "$analytics"
mark "analytics exactly once"

compose down -v --remove-orphans
trap - EXIT
[ -z "$(leftovers)" ] || fail "left behind after down -v: $(leftovers | tr '\n' ' ')"
mark "down -v: no container, network or volume left"

echo
echo "compose-test passed ($(${compose_command[@]} version --short 2>/dev/null || ${compose_command[@]} version | head -1))"
printf '  %s\n' "${phase_times[@]}"
echo "  $stopped"
echo "  $restore"
echo "  $outcome"
echo "  $windows"
echo "  $analytics"
image=$(sed -n 's/^ *image: *//p' docker-compose.yml | head -1)
echo "  image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1/1e9}') (images are kept for the next build)"
