;;; emacs_driver.el --- drives Eglot with editors/emacs/dgemma-eglot.el for tests/test_emacs.py -*- lexical-binding: t; -*-

;; As the README says: require the config, then setq the settings.  Completion at point in
;; a Python buffer, then "Repair JSON" applied in a JSON buffer opened after it (the same
;; server: Eglot before 1.15 sends the first buffer's languageId for both), the keys, and
;; M-x dgemma-eglot-apply-settings.  Input: $DGEMMA_EMACS_JOB (JSON); output: JSON in the
;; job's result file; every wait is bounded.

(require 'json)
(require 'cl-lib)

(defvar driver-job (json-parse-string (getenv "DGEMMA_EMACS_JOB") :object-type 'alist))
(defvar driver-report nil)

(defun driver-get (key) (alist-get key driver-job))

(defun driver-finish (failure)
  (push (cons 'failure failure) driver-report)
  (with-temp-file (driver-get 'result) (insert (json-encode driver-report)))
  (kill-emacs (if failure 1 0)))

(defun driver-wait (what condition seconds)
  "Process server output until CONDITION is non-nil; fail after SECONDS."
  (let ((deadline (+ (float-time) seconds)) value)
    (while (not (setq value (funcall condition)))
      (when (> (float-time) deadline)
        (driver-finish (format "timed out waiting for %s" what)))
      (accept-process-output nil 0.05))
    value))

(defun driver-events-contain (server text)
  (with-current-buffer (jsonrpc-events-buffer server)
    (save-excursion (goto-char (point-min)) (search-forward text nil t))))

(defun driver-open (file text)
  (find-file file)
  (erase-buffer)
  (insert text)
  (save-buffer)
  (current-buffer))

(condition-case err
    (progn
      (add-to-list 'load-path (driver-get 'config_dir))
      (require 'dgemma-eglot)
      ;; nobody answers Eglot's "apply this edit?" prompt in batch mode
      (setq eglot-confirm-server-initiated-edits nil)
      ;; after `require', as the README shows
      (setq dgemma-eglot-server-command (append (driver-get 'cmd) nil))
      (setq dgemma-eglot-settings
            (json-parse-string (driver-get 'settings) :object-type 'plist :false-object :json-false))

      ;; 1. a Python buffer: M-x eglot, completion at point
      (let* ((python (driver-open (driver-get 'python_file) (driver-get 'python_text)))
             (server (progn (call-interactively #'eglot)
                            (driver-wait "Eglot to connect" #'eglot-current-server 60))))
        (driver-wait "the model to load" (lambda () (driver-events-contain server "model ready")) 120)
        (goto-char (point-min))
        (forward-line (driver-get 'python_line))
        (end-of-line)
        (let* ((capf (eglot-completion-at-point))
               (candidates (all-completions "" (nth 2 capf))))
          (push (cons 'completions (vconcat candidates)) driver-report))
        (push (cons 'python_keys (format "%s" (key-binding (kbd "C-c .")))) driver-report)

        ;; 2. a JSON buffer opened after it: Repair JSON offered and applied
        (let ((json (driver-open (driver-get 'json_file) (driver-get 'json_text))))
          (driver-wait "Eglot to manage the JSON buffer" #'eglot-managed-p 30)
          (let* ((actions (eglot-code-actions (point-min) (point-max)))
                 (repair (cl-find "Repair JSON" actions
                                  :key (lambda (a) (plist-get a :title)) :test #'string-prefix-p)))
            (push (cons 'json_actions (vconcat (mapcar (lambda (a) (plist-get a :title)) actions)))
                  driver-report)
            (unless repair (driver-finish "no Repair JSON action in the JSON buffer"))
            (let ((before (buffer-string)))
              (eglot--read-execute-code-action (list repair) server (or (plist-get repair :kind) "quickfix"))
              (driver-wait "the repair to be applied"
                           (lambda () (not (equal (with-current-buffer json (buffer-string)) before))) 60)
              (push (cons 'json_after (with-current-buffer json (buffer-string))) driver-report)))
          (push (cons 'json_keys (format "%s" (key-binding (kbd "C-c .")))) driver-report))

        ;; 3. keys: a Markdown buffer dgemma-ls manages, then one it does not (another
        ;; directory, so another project): C-c C-a stays markdown-mode's in both
        (require 'markdown-mode) ; Debian's elpa-markdown-mode, which elpa-lsp-mode pulls in
        (driver-open (driver-get 'markdown_file) "# notes\n")
        (markdown-mode)
        (driver-wait "Eglot to manage the Markdown buffer" #'eglot-managed-p 30)
        (push (cons 'managed_markdown_c_c_c_a (format "%s" (key-binding (kbd "C-c C-a")))) driver-report)
        (driver-open (driver-get 'other_markdown_file) "# elsewhere\n")
        (markdown-mode)
        (push (cons 'other_markdown_managed (if (eglot-managed-p) t :json-false)) driver-report)
        (push (cons 'other_markdown_c_c_c_a (format "%s" (key-binding (kbd "C-c C-a")))) driver-report)
        (push (cons 'other_markdown_c_c_dot (format "%s" (key-binding (kbd "C-c .")))) driver-report)

        ;; 4. settings changed while running reach the server
        (with-current-buffer python
          (setq dgemma-eglot-settings (plist-put (copy-sequence dgemma-eglot-settings) :steps 2))
          (dgemma-eglot-apply-settings))
        (accept-process-output nil 1)
        (push (cons 'eglot_version (and (boundp 'eglot-version) eglot-version)) driver-report)
        (eglot-shutdown server))
      (driver-finish nil))
  (error (driver-finish (format "%S" err))))
