;;; dgemma-lsp-mode.el --- dgemma-ls through lsp-mode -*- lexical-binding: t; -*-

;;; Commentary:

;; Registers the dgemma-ls language server with lsp-mode as an add-on server: it runs
;; next to the language's own server (pyright, ts-ls, ...) in Python, JavaScript,
;; TypeScript, JSON and Markdown buffers.
;;
;;   (add-to-list 'load-path "/path/to/dgemma-ls/editors/emacs")
;;   (require 'dgemma-lsp-mode)
;;   (setq lsp-dgemma-device "cpu" lsp-dgemma-max-middle-tokens 48)
;;
;; Inline (ghost-text) completions use lsp-mode's lsp-inline-completion: M-TAB asks
;; for one, RET accepts, TAB / C-n / C-p cycle, C-g dismisses; with an lsp-mode that has
;; `lsp-inline-completion-mode' they also appear as you type.  `lsp-execute-code-action'
;; offers "Fill in the middle", "Repair JSON" and "Repair Markdown table".

;;; Code:

(require 'lsp-mode)

(defgroup lsp-dgemma nil
  "The dgemma-ls language server through lsp-mode."
  :group 'lsp-mode
  :prefix "lsp-dgemma-")

(defcustom lsp-dgemma-server-command '("dgemma-ls")
  "Command line that starts dgemma-ls on stdio."
  :type '(repeat string))

(defcustom lsp-dgemma-model nil
  "Checkpoint directory; nil uses the server's default model."
  :type '(choice (const nil) directory))

(defcustom lsp-dgemma-device "cpu"
  "Where the model runs."
  :type '(choice (const "cpu") (const "cuda") (const "auto")))

(defcustom lsp-dgemma-dtype "auto"
  "Weight and activation precision."
  :type '(choice (const "auto") (const "float32") (const "bfloat16") (const "float16")))

(defcustom lsp-dgemma-quantize nil
  "Weight-only quantization applied while the checkpoint loads; nil uses the server's --quantize."
  :type '(choice (const nil) (const "none") (const "int8") (const "int4") (const "fp8")))

(defcustom lsp-dgemma-compile t
  "Non-nil: torch.compile the denoising step in the background after the model loads (~25% faster)."
  :type 'boolean)

(defcustom lsp-dgemma-steps nil
  "Denoising steps per block; nil uses the engine's default."
  :type '(choice (const nil) integer))

(defcustom lsp-dgemma-entropy-bound nil
  "Entropy bound for accepting tokens; nil uses the engine's default."
  :type '(choice (const nil) number))

(defcustom lsp-dgemma-max-middle-tokens 48
  "Most tokens one completion or fill may produce."
  :type 'integer)

(defcustom lsp-dgemma-enabled-languages nil
  "Language ids to complete in; nil means every language."
  :type '(repeat string))

(defun lsp-dgemma--settings ()
  "The `dgemma' section, leaving out unset values so the server uses its defaults."
  (let ((settings (list :device lsp-dgemma-device
                        :dtype lsp-dgemma-dtype
                        :maxMiddleTokens lsp-dgemma-max-middle-tokens)))
    (when lsp-dgemma-model
      (setq settings (plist-put settings :model lsp-dgemma-model)))
    (when lsp-dgemma-quantize
      (setq settings (plist-put settings :quantize lsp-dgemma-quantize)))
    (setq settings (plist-put settings :compile (if lsp-dgemma-compile t :json-false)))
    (when lsp-dgemma-steps
      (setq settings (plist-put settings :steps lsp-dgemma-steps)))
    (when lsp-dgemma-entropy-bound
      (setq settings (plist-put settings :entropyBound lsp-dgemma-entropy-bound)))
    (when lsp-dgemma-enabled-languages
      (setq settings (plist-put settings :enabledLanguages
                                (vconcat lsp-dgemma-enabled-languages))))
    settings))

(lsp-register-client
 (make-lsp-client
  :new-connection (lsp-stdio-connection (lambda () lsp-dgemma-server-command))
  :activation-fn (lsp-activate-on "python" "javascript" "javascriptreact"
                                  "typescript" "typescriptreact" "json" "jsonc"
                                  "markdown")
  :server-id 'dgemma-ls
  :add-on? t
  :priority -2
  :initialization-options (lambda () (list :dgemma (lsp-dgemma--settings)))
  ;; Settings go as {"dgemma": {...}}: the same object answers workspace/configuration.
  :initialized-fn (lambda (workspace)
                    (with-lsp-workspace workspace
                      (lsp--set-configuration (list :dgemma (lsp-dgemma--settings)))))))

(defun lsp-dgemma-apply-settings ()
  "Send the current lsp-dgemma-* settings to the running server."
  (interactive)
  (lsp--set-configuration (list :dgemma (lsp-dgemma--settings))))

(with-eval-after-load 'lsp-inline-completion
  (when (fboundp 'lsp-inline-completion-mode)
    (add-hook 'lsp-mode-hook #'lsp-inline-completion-mode)))

(defvar lsp-dgemma-mode-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "M-TAB") #'lsp-inline-completion-display)
    map)
  "Keys of `lsp-dgemma-mode'.")

;; A minor mode rather than `local-set-key', which would change the major mode's map in
;; every buffer of that mode.
(define-minor-mode lsp-dgemma-mode
  "M-TAB asks for an inline completion: \\{lsp-dgemma-mode-map}"
  :lighter nil)

(defun lsp-dgemma--keys ()
  "Turn on `lsp-dgemma-mode' in lsp-mode buffers that have inline completion."
  (require 'lsp-inline-completion nil t)
  (when (fboundp 'lsp-inline-completion-display)
    (lsp-dgemma-mode (if lsp-mode 1 -1))))

(add-hook 'lsp-mode-hook #'lsp-dgemma--keys)

(provide 'dgemma-lsp-mode)
;;; dgemma-lsp-mode.el ends here
