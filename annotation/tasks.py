"""Background tasks of the annotation app (queued through annotation.jobs)."""

from annotation.jobs import task


@task(queue_name="default")
def run_import_task(job_id: int) -> dict:
    """Run one import job (see annotation.importing.run_import)."""
    from .importing import run_import

    job = run_import(job_id)
    return {"job": job.pk, "status": job.status, "items": job.items_imported, "errors": job.error_count}
