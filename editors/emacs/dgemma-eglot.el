;;; dgemma-eglot.el --- dgemma-ls through Eglot -*- lexical-binding: t; -*-

;;; Commentary:

;; Registers the dgemma-ls language server with Eglot (Emacs 29+) for Python,
;; JavaScript, TypeScript, JSON and Markdown buffers.
;;
;;   (add-to-list 'load-path "/path/to/dgemma-ls/editors/emacs")
;;   (require 'dgemma-eglot)
;;   (setq dgemma-eglot-settings '(:device "cpu" :maxMiddleTokens 48))
;;   M-x eglot in a Python buffer
;;
;; Eglot runs one server per buffer, so dgemma-ls takes the place of, say, pyright
;; there.  Suggestions arrive through completion-at-point (the server's
;; textDocument/completion fallback; Eglot has no inline completions), and
;; `eglot-code-actions' (C-c C-a below) offers "Fill in the middle", "Repair JSON"
;; and "Repair Markdown table".

;;; Code:

(require 'eglot)

(defgroup dgemma-eglot nil
  "The dgemma-ls language server through Eglot."
  :group 'eglot)

(defcustom dgemma-eglot-server-command '("dgemma-ls")
  "Command line that starts dgemma-ls on stdio."
  :type '(repeat string))

(defcustom dgemma-eglot-settings '(:device "cpu" :maxMiddleTokens 48)
  "The `dgemma' settings section as a plist of camelCase keys:
:model, :device, :dtype, :compile, :steps, :entropyBound, :maxMiddleTokens,
:enabledLanguages."
  :type 'plist)

(defconst dgemma-eglot-modes
  '(python-mode python-ts-mode
    js-mode js-ts-mode js-jsx-mode
    typescript-mode typescript-ts-mode tsx-ts-mode
    js-json-mode json-mode json-ts-mode jsonc-mode
    markdown-mode gfm-mode markdown-ts-mode)
  "Major modes dgemma-ls serves.")

(defun dgemma-eglot--contact (_interactive)
  "The server command, with the settings as initializationOptions."
  (append dgemma-eglot-server-command
          (list :initializationOptions (list :dgemma dgemma-eglot-settings))))

(add-to-list 'eglot-server-programs
             (cons dgemma-eglot-modes #'dgemma-eglot--contact))

;; Answers workspace/configuration and is pushed with didChangeConfiguration.
(defun dgemma-eglot--store-settings ()
  "Put `dgemma-eglot-settings' under :dgemma in `eglot-workspace-configuration'."
  (let ((current (default-value 'eglot-workspace-configuration)))
    (unless (functionp current)
      (setq-default eglot-workspace-configuration
                    (plist-put (copy-sequence current) :dgemma dgemma-eglot-settings)))))

(dgemma-eglot--store-settings)

(defun dgemma-eglot-apply-settings ()
  "Send `dgemma-eglot-settings' to the server of the current buffer."
  (interactive)
  (dgemma-eglot--store-settings)
  (let ((server (eglot-current-server)))
    (if server
        (eglot-signal-didChangeConfiguration server)
      (user-error "No Eglot server in this buffer"))))

(defun dgemma-eglot--keys ()
  "Bind the code-action key in buffers Eglot manages."
  (local-set-key (kbd "C-c C-a") #'eglot-code-actions))

(add-hook 'eglot-managed-mode-hook #'dgemma-eglot--keys)

(provide 'dgemma-eglot)
;;; dgemma-eglot.el ends here
