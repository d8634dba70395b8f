"""The Docker engine as the image tests drive it: the docker CLI, and the service running in one container.

The engine is whatever DOCKER_HOST names (scripts/test-image.sh starts one); containers use the host network.
"""

from __future__ import annotations

import json
import subprocess
import time

import requests

from harness.service import ServiceProcess, free_port, wait_until

# every container the tests start carries it, so a run cleans up what an interrupted one left
LABEL = "whisper-image-test"
# converting the bundled tiny.en and loading it, in a container on a busy 2-core machine (5 min seen at load 28)
STARTUP_SECONDS = 900.0


def docker(*arguments: str, timeout: float = 120, check: bool = True) -> str:
    """Run the docker CLI; a failure fails the test with everything docker said."""
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        said = result.stdout + result.stderr
        raise AssertionError(f"docker {' '.join(arguments)} exited {result.returncode}:\n{said}")
    return result.stdout


def answers_health(url: str) -> bool:
    """Whether the service at `url` answers /health with 200 (not yet listening counts as no)."""
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def remove_leftovers() -> None:
    """Containers (and their anonymous volumes) of an earlier, interrupted run."""
    leftovers = docker("ps", "--all", "--quiet", "--filter", f"label={LABEL}").split()
    if leftovers:
        docker("rm", "--force", "--volumes", *leftovers)


class ServiceContainer:
    """The service image in one container on its own host port; the same calls as harness.service.ServiceProcess."""

    def __init__(self, image: str, name: str, *run_options: str, **env: str) -> None:
        self.image = image
        self.name = f"{LABEL}-{name}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_options = run_options
        # the port is the host's (host network), so the image's HEALTHCHECK reads it from WHISPER_PORT too
        self.env = {"WHISPER_PORT": str(self.port), **env}
        self.auth_headers: dict[str, str] = {}

    def start(self) -> ServiceContainer:
        """`docker run` as docker-compose.yml runs the service (an init, uploads on a tmpfs unless given)."""
        options = list(self.run_options)
        if not any(option.startswith("--mount=type=tmpfs,destination=/uploads") for option in options):
            options.append("--mount=type=tmpfs,destination=/uploads")
        environment = [f"--env={name}={value}" for name, value in self.env.items()]
        docker("rm", "--force", "--volumes", self.name, check=False)
        docker(
            "run",
            "--detach",
            f"--name={self.name}",
            f"--label={LABEL}",
            "--network=host",
            "--init",
            *environment,
            *options,
            self.image,
        )
        return self

    def wait_until_serving(self, timeout: float = STARTUP_SECONDS) -> float:
        """Seconds until /health answers 200; fails early, with the log, if the container stops."""
        started = time.monotonic()

        def healthy() -> bool:
            if self.state()["Status"] in {"exited", "dead"}:
                raise AssertionError(f"{self.name} stopped while starting:\n{self.logs()}")
            return answers_health(self.url)

        try:
            wait_until(healthy, timeout, f"{self.name} serves /health")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None
        return time.monotonic() - started

    def __enter__(self) -> ServiceContainer:
        self.start()
        try:
            self.wait_until_serving()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)

    def inspect(self) -> dict:
        return json.loads(docker("container", "inspect", self.name))[0]

    def state(self) -> dict:
        return self.inspect()["State"]

    def logs(self) -> str:
        result = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=60, check=False)
        return (result.stdout + result.stderr)[-5000:]

    def exec(self, *command: str, user: str | None = None) -> subprocess.CompletedProcess:
        """A command in the running container, as the image's user unless `user` is given."""
        options = [f"--user={user}"] if user else []
        return subprocess.run(
            ["docker", "exec", *options, self.name, *command], capture_output=True, text=True, timeout=120, check=False
        )

    def upload_dir_entries(self) -> list[str]:
        listing = self.exec("ls", "-A", "/uploads")
        assert listing.returncode == 0, listing.stderr
        return listing.stdout.split()

    # talking HTTP to the service is the same in a container: ServiceProcess's calls use only url and auth_headers
    transcribe = ServiceProcess.transcribe
    metric_samples = ServiceProcess.metric_samples
    metric_total = ServiceProcess.metric_total
