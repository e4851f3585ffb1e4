/**
 * Progress of long work, as a callback interface: the library reports, whoever calls it shows
 * (the CLI draws one line on a TTY, plugin/cli/progress.ts). Below the CLI nothing draws.
 */
export interface Progress {
  /** Add done bytes (or units). */
  advance(amount: number): void;
  /** Set a short label for what is being worked on. */
  label(text: string): void;
  done(): void;
}

/** Makes the progress reporter of a job once its total (bytes) is known. */
export type ProgressFactory = (total: number) => Progress;

/** Reports nothing. */
export const SILENT_PROGRESS: Progress = { advance() {}, label() {}, done() {} };
