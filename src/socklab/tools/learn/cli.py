"""The ``socklab learn`` command: list the lessons, or walk through one and end with an exercise."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from socklab.cli.options import run_cli
from socklab.core.errors import UsageError
from socklab.tools.learn.catalog import LESSONS, OBJECTIVES, Lesson, Mistake, find_lesson

__all__ = ["learn", "plant", "source_of"]

LESSONS_DIR = Path(__file__).resolve().parent.parent.parent / "lessons"


def source_of(module: str) -> Path:
    return LESSONS_DIR / f"{module}.py"


def plant(lesson: Lesson, mistake: Mistake | None) -> str:
    """The exercise's program: the lesson's first program, with ``mistake`` planted."""
    text = source_of(lesson.programs[0]).read_text(encoding="utf-8")
    if mistake is None:
        return text
    if text.count(mistake.find) != 1:
        raise RuntimeError(f"lesson {lesson.name}: mistake {mistake.name} no longer matches the source")
    return text.replace(mistake.find, mistake.replace)


def list_lessons() -> None:
    click.echo("Lessons, by objective. `socklab learn NAME` walks through one; start with tcp-echo.\n")
    for objective in OBJECTIVES:
        click.echo(objective)
        for lesson in LESSONS:
            if lesson.objective == objective:
                graded = f"  [socklab check {lesson.check}]" if lesson.check else ""
                click.echo(f"  {lesson.name:<10} {lesson.title}{graded}")
        click.echo("")
    click.echo(f"The programs are in {LESSONS_DIR}; each runs as: python -m socklab.lessons.MODULE")


def _pause(pause: bool) -> None:
    if not pause:
        return
    click.prompt("  your prediction (then Enter to see)", default="", show_default=False, prompt_suffix="> ")
    click.echo("")


def walk(lesson: Lesson, pause: bool, trace: bool, workdir: Path) -> None:
    from socklab.tools.learn.runner import LessonRun, tracing_available
    from socklab.tools.learn.scenes import SCENES, Stage, show_program

    click.echo(f"== Lesson {lesson.name}: {lesson.title}  (objective: {lesson.objective})\n")
    click.echo("Read the programs first (each fits in one sitting):")
    for module in lesson.programs:
        path = source_of(module)
        lines = len(path.read_text(encoding="utf-8").splitlines())
        click.echo(f"  {path}  ({lines} lines)")
    if trace:
        why_not = tracing_available()
        if why_not:
            click.echo(f"\n(not tracing: {why_not}; run with --no-trace to skip this check)")
            trace = False
    run = LessonRun(trace)
    try:
        stage = Stage(run, click.echo, workdir=run.tmp)
        _prepare_files(run.tmp)
        if lesson.server:
            args = [a.replace("{work}", str(run.tmp)) for a in lesson.server_args]
            traced = " under socklab trace run" if trace else ""
            click.echo(f"\nStarting the server{traced}: python -m socklab.lessons.{lesson.server} 0 {' '.join(args)}")
            stage.server, stage.host, stage.port = run.start_server("socklab.lessons." + lesson.server, args,
                                                                    stdin=lesson.server_stdin)
            click.echo(f"  it said: listening on {stage.host}:{stage.port}  (port 0: the kernel chose the port)")
        for i, name in enumerate(lesson.scenes, 1):
            scene = SCENES[name]
            click.echo(f"\n-- Scene {i} of {len(lesson.scenes)}\nPredict: {scene.question}")
            _pause(pause)
            scene.run(stage)
            click.echo(f"Why: {scene.answer}")
        if stage.server is not None:
            stage.server.stop()
            click.echo("\n-- The server's side (stopped with Ctrl-C)")
            show_program(stage.server, click.echo, f"python -m socklab.lessons.{lesson.server}")
    finally:
        run.close()


def _prepare_files(work: Path) -> None:
    """The files the web and file lessons serve."""
    (work / "www").mkdir(exist_ok=True)
    (work / "www" / "index.html").write_text("<h1>Hello from the web lesson</h1>\n", encoding="utf-8")
    (work / "shared").mkdir(exist_ok=True)
    (work / "shared" / "notes.txt").write_text("notes: TCP is a byte stream\n" * 100, encoding="utf-8")
    (work / "secret.txt").write_text("outside the shared directory\n", encoding="utf-8")


def exercise(lesson: Lesson, mistake_name: str | None, directory: Path, force: bool) -> None:
    mistake = None
    if lesson.mistakes:
        names = [m.name for m in lesson.mistakes]
        if mistake_name is None:
            mistake = lesson.mistakes[0]
        elif mistake_name in names:
            mistake = lesson.mistakes[names.index(mistake_name)]
        else:
            raise UsageError(f"--mistake {mistake_name!r}: lesson {lesson.name} has {', '.join(names)}")
    elif mistake_name is not None:
        raise UsageError(f"--mistake: lesson {lesson.name} has no planted mistakes (its exercise is open)")
    directory.mkdir(parents=True, exist_ok=True)
    module = lesson.programs[0]
    target = directory / f"{module}.py"
    if target.exists() and not force:
        raise UsageError(f"{target} exists: give another --dir, or --force to overwrite it")
    target.write_text(plant(lesson, mistake), encoding="utf-8")
    click.echo("\n-- Your exercise")
    if mistake is None:
        click.echo(f"Wrote {target}: a copy of the lesson to change. Try this: {lesson.try_this}.")
    else:
        others = [m.name for m in lesson.mistakes if m is not mistake]
        more = f" (--mistake {' / '.join(others)} plants another)" if others else ""
        args = ""
        if lesson.name == "web":
            www = directory / "www"
            www.mkdir(exist_ok=True)
            if not (www / "index.html").exists():
                (www / "index.html").write_text("<h1>It works</h1>\n", encoding="utf-8")
            args = " www"
        click.echo(f"Wrote {target}: the lesson's program with one classic mistake planted{more}.")
        click.echo(f"  1. run it:    cd {directory} && python3 {target.name} {lesson.port}{args}")
        check = (lesson.check or "").replace("--root www", f"--root {directory / 'www'}")
        click.echo(f"  2. grade it:  socklab check {check} 127.0.0.1:{lesson.port}")
        click.echo("  The check fails now and names the mistake. Fix the program until every probe passes.")
        click.echo(f"  Stuck? compare: diff {source_of(module)} {target}")
    click.echo(f"At full strength: {lesson.full_strength}")


@click.command()
@click.argument("name", required=False)
@click.option("--no-pause", is_flag=True, help="Run straight through without waiting for predictions "
              "(for scripts, tests and a second viewing).")
@click.option("--no-trace", is_flag=True, help="Do not run the programs under `socklab trace run`.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where the exercise's program is written.")
@click.option("--mistake", metavar="NAME", help="Which planted mistake the exercise gets (default: the first).")
@click.option("--force", is_flag=True, help="Overwrite the exercise file if it exists.")
@click.option("--no-exercise", is_flag=True, help="Walk through the lesson without writing the exercise.")
@run_cli
def learn(name: str | None, no_pause: bool, no_trace: bool, directory: Path, mistake: str | None,
          force: bool, no_exercise: bool) -> None:
    """Learn sockets with small programs: run them, predict, watch, then fix a planted mistake.

    Without NAME: the lessons, grouped by objective. With NAME: the lesson's programs run (traced
    with `socklab trace run` when the machine allows), each scene asks you to predict what will
    happen before it shows you, and the walk ends with an exercise - a copy of the program with a
    classic mistake planted, and the `socklab check` command that grades your fix.

    \b
    Examples:
      socklab learn                                 # the list
      socklab learn tcp-echo                        # the first lesson, with pauses
      socklab learn chat --no-pause --dir ~/labs    # straight through; exercise in ~/labs
      socklab learn web --mistake traversal         # the web lesson, planting path traversal
      python -m socklab.lessons.tcp_echo_server 7007     # any lesson program, on its own
    """
    if name is None:
        list_lessons()
        return
    lesson = find_lesson(name)
    if lesson is None:
        raise UsageError(f"no lesson {name!r}: the lessons are {', '.join(x.name for x in LESSONS)}")
    if not no_exercise:  # check the options before the walk, not after it
        if mistake is not None and mistake not in [m.name for m in lesson.mistakes]:
            have = ", ".join(m.name for m in lesson.mistakes) or "none"
            raise UsageError(f"--mistake {mistake!r}: lesson {lesson.name} has: {have}")
        target = directory / f"{lesson.programs[0]}.py"
        if target.exists() and not force:
            raise UsageError(f"{target} exists: give another --dir, or --force to overwrite it")
    pause = not no_pause and sys.stdin.isatty()
    walk(lesson, pause, not no_trace, directory)
    if not no_exercise:
        exercise(lesson, mistake, directory, force)
